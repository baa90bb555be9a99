"""Reference PLC bridge: verdicts -> PLC outputs over Modbus TCP and OPC UA (`lineguard plc-bridge`)."""
