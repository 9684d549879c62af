"""Faults for the ML Incident Sandbox that live outside it, registered through its entry point."""
