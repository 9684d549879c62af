"""The interviewer's review of a session: which recorded events touched planted evidence, the
timeline, the diagnosis against the answer key, the rubric, and the exported report."""
