-- wilson_lower_bound as a SQL function: the planner inlines it into the read-model upserts
-- instead of calling PL/pgSQL for every row. The same operations in the same order as before
-- (and as projections/model.py and projections/apply.lua): z * z is 3.8414588206941254 exactly,
-- n is (up + down) as a double, p is up / n; the results are bit-identical (compared over
-- every up and down from 0 to 200).
CREATE OR REPLACE FUNCTION wilson_lower_bound(up bigint, down bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN up <= 0 OR down < 0 THEN 0::float8 ELSE greatest(
    (up::float8 / (up + down) + 3.8414588206941254::float8 / (2 * (up + down)::float8)
     - 1.959963984540054::float8 * sqrt(
        ((up::float8 / (up + down)) * (1 - up::float8 / (up + down))
         + 3.8414588206941254::float8 / (4 * (up + down)::float8)) / (up + down)::float8))
    / (1 + 3.8414588206941254::float8 / (up + down)::float8),
    0::float8) END;
