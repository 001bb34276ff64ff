"""rutune.train"""
