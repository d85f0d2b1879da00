"""Reports that answer "how did it do": a campaign's or a workflow's figures from the state database, in the
terminal, as JSON or as CSV. `figures` computes them (typed), `render` lays them out."""
