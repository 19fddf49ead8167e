# The threaded side of Loop (_threaded.py): private kinds of asyncio classes, no public names.
