"""Developer tools around the product (not installed with it): they may import the product, never
the reverse."""
