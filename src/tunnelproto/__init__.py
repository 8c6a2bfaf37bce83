"""tunnelproto: the sans-IO tunnel protocol core."""
