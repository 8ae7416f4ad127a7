// qstrs specific to the emulated port (none beyond those found automatically)
