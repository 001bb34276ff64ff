"""rutune.eval"""
