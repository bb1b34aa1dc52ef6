"""Networks: the generator of Table 1, the backbones of Table 2, the discriminator."""
