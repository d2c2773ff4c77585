"""Store-and-forward MQTT sink: committed samples published at QoS 1, acknowledged by the broker."""
