"""Failover drills: inject a fault, follow the agents' own records, score and report (shared by the UI and
`x0dash drill`)."""
