"""tunnel_trio: trio drivers for the tunnelproto core."""
