"""The IoT edge: polls OPC UA and Modbus PLCs and republishes to MQTT and InfluxDB, with an edge API."""
