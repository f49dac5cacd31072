"""rsttrace.remedy."""
