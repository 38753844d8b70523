"""Media: format sniffing, safe image decode, device JPEG decode and video frames."""
