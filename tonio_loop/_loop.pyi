# The loop assembled in _loop.py; its public face is tonio_loop's.
from . import Loop as Loop, new_event_loop as new_event_loop
