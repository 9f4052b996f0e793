"""Signal path: filter, artifact blanking, spike detection."""
