"""The explainer: defect events -> defect reports from a vision-language model (`lineguard explainer`)."""
