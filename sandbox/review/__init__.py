"""The interviewer's review of a session: the sessions store and its recorded history, which
recorded events touched planted evidence, the timeline, the diagnosis against the answer key, the
rubric, and the exported report. The gateway's routes and the command line both use it."""
