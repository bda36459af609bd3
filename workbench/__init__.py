"""incidentlab workbench: pandas frames, replay and ipywidgets for operators.

Arrives with its own issue; this package holds only its docstring until then.
"""
