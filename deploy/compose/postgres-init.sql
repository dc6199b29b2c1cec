-- Runs once, on an empty data volume: POSTGRES_DB creates `hydra`; Kratos gets its own database
-- (both services have tables of the same names, such as `networks`).
CREATE DATABASE kratos;
