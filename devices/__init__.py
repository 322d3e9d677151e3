"""The emulated plant: asset models ticked by simulated PLCs and exposed over OPC UA and Modbus TCP."""
