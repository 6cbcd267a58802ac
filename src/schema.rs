// @generated automatically by Diesel CLI.

diesel::table! {
    auth_tokens (id) {
        id -> Int8,
        user_id -> Int8,
        token_hash -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    messages (id) {
        id -> Int8,
        room_id -> Int8,
        seq -> Int8,
        author_id -> Int8,
        client_id -> Nullable<Text>,
        body -> Text,
        created_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    notify_key (id) {
        id -> Bool,
        key -> Bytea,
    }
}

diesel::table! {
    presence (room_id, user_id, instance_id) {
        room_id -> Int8,
        user_id -> Int8,
        instance_id -> Int8,
    }
}

diesel::table! {
    presence_leases (instance_id) {
        instance_id -> Int8,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    read_markers (user_id, room_id) {
        user_id -> Int8,
        room_id -> Int8,
        last_read_seq -> Int8,
    }
}

diesel::table! {
    room_members (room_id, user_id) {
        room_id -> Int8,
        user_id -> Int8,
        joined_at -> Timestamptz,
    }
}

diesel::table! {
    rooms (id) {
        id -> Int8,
        name -> Text,
        created_by -> Int8,
        created_at -> Timestamptz,
        last_seq -> Int8,
    }
}

diesel::table! {
    users (id) {
        id -> Int8,
        username -> Text,
        display_name -> Text,
        role -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(auth_tokens -> users (user_id));
diesel::joinable!(messages -> rooms (room_id));
diesel::joinable!(messages -> users (author_id));
diesel::joinable!(presence -> rooms (room_id));
diesel::joinable!(presence -> users (user_id));
diesel::joinable!(read_markers -> rooms (room_id));
diesel::joinable!(read_markers -> users (user_id));
diesel::joinable!(room_members -> rooms (room_id));
diesel::joinable!(room_members -> users (user_id));
diesel::joinable!(rooms -> users (created_by));

diesel::allow_tables_to_appear_in_same_query!(
    auth_tokens,
    messages,
    notify_key,
    presence,
    presence_leases,
    read_markers,
    room_members,
    rooms,
    users,
);
