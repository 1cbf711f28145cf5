"""Getting instances in: received bytes → parsed instance and durable file → index rows."""
