"""Pure tensor functions: linear-recurrence scans with ``initial_state`` in and ``final_state`` out.

Every op comes in three forms with one signature, layout ``[batch, time, ...]``:
``naive`` (the specification: a readable sequential loop), ``chunk`` (the fast training form) and
``step`` (one recurrent step for decoding). See the README beside each op for its derivation.
"""
