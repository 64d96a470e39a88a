# Benchmark tools (link emulator).
