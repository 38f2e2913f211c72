"""The control cycle: snapshot, estimate, dispatch, verify, write, publish; the state machine."""
