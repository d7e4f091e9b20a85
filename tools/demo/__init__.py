"""The demo: a support desk's agents and tools (agents.py), the agents that prove the runtime
under crashes and load (proving.py), and the tables of the outside world they act on
(models.py). Loaded only with DEMO=1 (agentops/settings.py); `make up` and `make test` set it.
"""
