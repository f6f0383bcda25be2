"""The patient record: FHIR resources normalised into facts (status, negation, dates, units: knowledge
base Part B), and the queries rules ask of them."""
