"""View models of the ops console: plain typed functions over the data the JSON API reports."""
