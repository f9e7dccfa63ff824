"""Where the vehicle is: NMEA sentences -> epochs (one fix per receiver cycle) -> the position filter.

`nmea` parses and checks sentences, `epochs` groups them into fixes, `source` reads a serial port, gpsd or a
file, `kalman` filters (and smooths) the fixes into poses, `fix_noise` learns the receiver's noise.
May import: edge_agent.config, edge_agent.health, roadmon_contract. Nothing else of the agent.
"""
