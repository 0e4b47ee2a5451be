"""The parts of `python bench/load.py`: the processes it starts and what /proc says of them
(`procs`), the upstream and the gateway (`targets`), the scenarios (`scenarios`), the load
generators (`drivers`), the gateway's stage timings (`stages`) and the tables (`report`)."""
