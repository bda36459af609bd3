"""Fixture builders that tests/, bench/ and notebooks/ share: synthetic telemetry windows
(`scenarios`), the windows recorded on a real host and their recorder (`windows/`), the run
store the real workflow makes from them (`store`), and the kernel objects the root tests and
the recorder make (`kernel_fixtures`). Nothing in collector/, controller/, workbench/ or
pipelines/ imports it, and it is not in the wheel.
"""
