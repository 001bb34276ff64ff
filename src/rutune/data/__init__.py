"""rutune.data"""
