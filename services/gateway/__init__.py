"""ESPHome native-API gateway: serves the aggregator's device documents and the reader's advertisements."""
