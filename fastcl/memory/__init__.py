"""Episodic memories: ring buffer (last m per class per task) and reservoir."""
