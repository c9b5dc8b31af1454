"""Pure detection library: no Kafka, Faust, HTTP or clock reads."""
