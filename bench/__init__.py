"""tonio_loop's benchmarks: tonio_loop side by side with asyncio and uvloop."""
