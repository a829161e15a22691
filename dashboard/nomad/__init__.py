"""x0dash's Nomad source: settings from the environment, python-nomad calls with clear errors, the pure mapping
from Nomad objects to mesh nodes, the supervised event stream and the drills Nomad can run.

`dashboard.providers.nomad.NomadProvider` ties them together behind the provider interface.
"""
