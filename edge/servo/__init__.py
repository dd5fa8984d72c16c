"""``servo:``: the serial link, one module per controller protocol, the supervisor, an emulator, its CLI."""
