"""The roof: processes and commands. The CLI (the only argument parser), the demo, the
embedded stack, running processes together, and which processors a worker runs."""
