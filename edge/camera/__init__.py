"""``camera:`` and ``trigger:``: frames from the tray and the moment an item is there to classify."""
