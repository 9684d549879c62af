"""The production ML stack the world runs through: one module per stage, each with its fault hooks."""
