DROP TABLE messages;
DROP TABLE room_members;
DROP TABLE rooms;
DROP TABLE auth_tokens;
DROP TABLE users;
