-- A job database written by serving/store.py at schema version 1 (commit ce90a8c), dumped with iterdump().
-- Rebuild: sqlite3 jobs.sqlite3 < store_v1.sql (then PRAGMA user_version=1, set by the last line).
BEGIN TRANSACTION;
CREATE TABLE jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    request_id   TEXT    UNIQUE,
    fingerprint  TEXT    NOT NULL,
    source_image TEXT    NOT NULL,
    driven_audio TEXT    NOT NULL,
    option       TEXT    NOT NULL,
    landmarks    TEXT,
    audio_seconds REAL,
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed')),
    progress     REAL    NOT NULL DEFAULT 0,
    stage        TEXT,
    output_path  TEXT    NOT NULL UNIQUE,
    error        TEXT,
    error_kind   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    started_at   REAL,
    finished_at  REAL
);
INSERT INTO "jobs" VALUES(1,'6721c26dbcb443339fc8f21b3f58fcc8','done-1','fp-v1-1','/data/inputs/face1.png','/data/inputs/speech1.wav','crop',NULL,2.0,'completed',100.0,'done','/data/output/20260101-000000_00000001.mp4',NULL,NULL,1,1767225600.0,1767225601.0,1767225602.0);
INSERT INTO "jobs" VALUES(2,'87dec93ddb1a4726ac4d01a93c0a3a18','failed-1','fp-v1-2','/data/inputs/face2.png','/data/inputs/speech2.wav','full',NULL,2.0,'failed',0.0,'starting','/data/output/20260101-000000_00000002.mp4','NoFaceError: no face','no_face',1,1767225603.0,1767225604.0,1767225605.0);
INSERT INTO "jobs" VALUES(3,'4d1da68782db4b26829fc9a7c16683a8','running-1','fp-v1-3','/data/inputs/face3.png','/data/inputs/speech3.wav','crop',NULL,2.0,'running',40.0,'render','/data/output/20260101-000000_00000003.mp4',NULL,NULL,1,1767225606.0,1767225607.0,NULL);
INSERT INTO "jobs" VALUES(4,'72f96241894a43cc947c382381e6cb72','queued-1','fp-v1-4','/data/inputs/face4.png','/data/inputs/speech4.wav','full','[[0.0, 0.5], [1.0, 1.5], [2.0, 2.5], [3.0, 3.5], [4.0, 4.5], [5.0, 5.5], [6.0, 6.5], [7.0, 7.5], [8.0, 8.5], [9.0, 9.5], [10.0, 10.5], [11.0, 11.5], [12.0, 12.5], [13.0, 13.5], [14.0, 14.5], [15.0, 15.5], [16.0, 16.5], [17.0, 17.5], [18.0, 18.5], [19.0, 19.5], [20.0, 20.5], [21.0, 21.5], [22.0, 22.5], [23.0, 23.5], [24.0, 24.5], [25.0, 25.5], [26.0, 26.5], [27.0, 27.5], [28.0, 28.5], [29.0, 29.5], [30.0, 30.5], [31.0, 31.5], [32.0, 32.5], [33.0, 33.5], [34.0, 34.5], [35.0, 35.5], [36.0, 36.5], [37.0, 37.5], [38.0, 38.5], [39.0, 39.5], [40.0, 40.5], [41.0, 41.5], [42.0, 42.5], [43.0, 43.5], [44.0, 44.5], [45.0, 45.5], [46.0, 46.5], [47.0, 47.5], [48.0, 48.5], [49.0, 49.5], [50.0, 50.5], [51.0, 51.5], [52.0, 52.5], [53.0, 53.5], [54.0, 54.5], [55.0, 55.5], [56.0, 56.5], [57.0, 57.5], [58.0, 58.5], [59.0, 59.5], [60.0, 60.5], [61.0, 61.5], [62.0, 62.5], [63.0, 63.5], [64.0, 64.5], [65.0, 65.5], [66.0, 66.5], [67.0, 67.5]]',2.0,'queued',0.0,NULL,'/data/output/20260101-000000_00000004.mp4',NULL,NULL,0,1767225608.0,NULL,NULL);
INSERT INTO "jobs" VALUES(5,'bdc87b64cbe44c179ac68d8fdc9c7085',NULL,'fp-v1-5','/data/inputs/face5.png','/data/inputs/speech5.wav','crop',NULL,2.0,'queued',0.0,NULL,'/data/output/20260101-000000_00000005.mp4',NULL,NULL,0,1767225609.0,NULL,NULL);
CREATE INDEX jobs_state ON jobs (state, seq);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('jobs',5);
COMMIT;
PRAGMA user_version=1;
