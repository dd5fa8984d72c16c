"""``model:``: the bundle, its preprocessing, the classifier, the taxonomy and the bin decision."""
