"""rutune.report"""
