"""explain: Grad-CAM overlay of one slice with the registry's current champion."""
