"""The ops console's actions: what a candidate may change in the running stack, and how the change
reaches the live services.

`catalog` lists every action (id, plain description, parameters, delay, whether this version can
apply it); `overrides` is the per-stack file the gateway appends an applied action to and the
services read, each change in effect from a simulated time. What an action does to a planted fault
is the fault's own declaration (`Planted.actions`), carried in the answer key.
"""
