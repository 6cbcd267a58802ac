//! Issue 14: the console at `/`, in a real browser (headless Chromium over
//! WebDriver): two users chatting, scroll-back, a server restart under an
//! open page, the agent's all-rooms view, and the page at 360 px.

use chatpool::testkit::api::{
    create_room, get, id_of, post_message, register, user_with_role, PASSWORD,
};
use chatpool::testkit::browser::{Browser, Page};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::bulk_messages_sql;
use chatpool::testkit::{bounded, spawn_app, AppOptions, Role, TestApp};
use serde_json::json;

/// Signs in through the form.
async fn log_in(page: &Page, app: &TestApp, username: &str) {
    page.goto(&app.url("/")).await;
    page.fill("#username", username).await;
    page.fill("#password", PASSWORD).await;
    page.click("#login").await;
    page.wait_text("#whoami", username).await;
    page.wait_text("#status", "online").await;
}

/// Signs in with a token (as a page reload after a login does).
async fn with_token(page: &Page, app: &TestApp, token: &str) {
    page.goto(&app.url("/")).await;
    page.eval(
        "sessionStorage.setItem('chatpool.token', arguments[0]);",
        vec![json!(token)],
    )
    .await;
    page.goto(&app.url("/")).await;
    page.wait_text("#status", "online").await;
}

async fn open_room(page: &Page, room: i64) {
    page.click(&format!("#rooms button[data-room=\"{room}\"]"))
        .await;
    page.wait_until(
        "the room to open",
        "return document.querySelector('#rooms button[aria-current=\"true\"]')?.dataset.room === arguments[0];",
        vec![json!(room.to_string())],
    )
    .await;
}

/// Waits until `n` messages are shown.
async fn shown(page: &Page, what: &str, n: usize) {
    page.wait_until(
        what,
        "return document.querySelectorAll('#messages li').length === arguments[0];",
        vec![json!(n)],
    )
    .await;
}

async fn say(page: &Page, text: &str) {
    page.fill("#body", text).await;
    page.click("#composer button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_users_chat_and_see_messages_typing_receipts_presence_edits_and_unread_badges() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let room = id_of(&create_room(&app, &alice.token, "support", &[bob.id()]).await);
        let other = id_of(&create_room(&app, &alice.token, "billing", &[bob.id()]).await);
        let browser = Browser::start().await;
        let (a, b) = (browser.page().await, browser.page().await);
        log_in(&a, &app, "alice").await;
        log_in(&b, &app, "bob").await;
        open_room(&a, room).await;
        open_room(&b, room).await;
        a.wait_text("#presence", "bob").await;

        say(&a, "hello bob").await;
        b.wait_text("#messages", "hello bob").await;
        // Bob has it on screen: his receipt reaches alice.
        a.wait_text("#receipts", "bob (up to #1)").await;
        // Typing, both ways.
        b.fill("#body", "typing a reply").await;
        a.wait_text("#typing", "bob is typing").await;
        b.click("#composer button[type=submit]").await;
        a.wait_text("#messages", "typing a reply").await;
        b.wait_text("#messages", "typing a reply").await;
        assert_eq!(a.seqs().await, [1, 2]);
        assert_eq!(b.seqs().await, [1, 2]);
        a.wait_text("#receipts", "bob (up to #2)").await;
        let shot = a.screenshot().await;
        assert!(shot.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all("target").ok();
        std::fs::write("target/console.png", shot).expect("screenshot written");

        // Alice edits and deletes her own message; bob sees both.
        a.click("#messages li[data-seq=\"1\"] button").await;
        a.fill("#messages li[data-seq=\"1\"] textarea", "hello, bob").await;
        a.click("#messages li[data-seq=\"1\"] button[type=submit]").await;
        b.wait_text("#messages li[data-seq=\"1\"]", "hello, bob (edited)").await;
        a.wait_text("#messages li[data-seq=\"1\"]", "Delete").await;
        a.click("#messages li[data-seq=\"1\"] button:nth-of-type(2)").await;
        b.wait_text("#messages li[data-seq=\"1\"]", "(deleted)").await;

        // A message in a room bob does not have open shows as unread.
        post_message(&app, &alice.token, other, "invoice sent", None).await.expect(201);
        b.wait_text(&format!("#rooms button[data-room=\"{other}\"] .badge"), "1").await;
        open_room(&b, other).await;
        b.wait_text("#messages", "invoice sent").await;
        b.wait_until(
            "the badge to go",
            "return !document.querySelector(`#rooms button[data-room=\"${arguments[0]}\"] .badge`);",
            vec![json!(other)],
        )
        .await;
        let rooms = get(&app, "/api/rooms", &bob.token).await.expect(200);
        assert!(rooms["rooms"].as_array().unwrap().iter().all(|r| r["unread"] == 0), "{rooms}");

        // Bob leaves the room: alice sees him go offline.
        b.click("#logout").await;
        a.wait_until(
            "bob offline",
            "return !document.querySelector('#presence').textContent.includes('bob');",
            vec![],
        )
        .await;
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scrolling_back_loads_older_pages_in_order() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "long", &[]).await);
        let client = sql_client(&app.db.url, "chatpool-tests").await;
        bulk_messages_sql(&client, room, alice.id(), 120).await;
        let browser = Browser::start().await;
        let page = browser.page().await;
        with_token(&page, &app, &alice.token).await;
        open_room(&page, room).await;
        shown(&page, "the latest page", 50).await;
        assert_eq!(page.seqs().await, (71..=120).collect::<Vec<_>>());
        page.click("#older").await;
        shown(&page, "a second page", 100).await;
        page.click("#older").await;
        shown(&page, "every page", 120).await;
        assert_eq!(page.seqs().await, (1..=120).collect::<Vec<_>>());
        page.wait_until(
            "no older pages",
            "return document.querySelector('#older').hidden;",
            vec![],
        )
        .await;
        page.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_open_across_a_server_restart_resumes_without_gaps_or_duplicates() {
    bounded(async {
        let app = spawn_app().await;
        let (db, addr) = (app.db.clone(), app.addr);
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        for i in 1..=3 {
            post_message(&app, &alice.token, room, &format!("before {i}"), None)
                .await
                .expect(201);
        }
        let browser = Browser::start().await;
        let page = browser.page().await;
        with_token(&page, &app, &alice.token).await;
        open_room(&page, room).await;
        page.wait_text("#messages", "before 3").await;

        app.shutdown().await.expect("clean shutdown");
        page.wait_text("#status", "offline").await;
        // Committed while the page was away (another instance, say).
        let client = sql_client(&db.url, "chatpool-tests").await;
        bulk_messages_sql(&client, room, alice.id(), 2).await;
        client
            .execute(
                "UPDATE messages SET body = 'before 2, edited', edited_at = now() WHERE room_id = $1 AND seq = 2",
                &[&room],
            )
            .await
            .unwrap();
        let app = AppOptions::default()
            .database(db)
            .env("CHATPOOL_LISTEN", addr)
            .spawn()
            .await;
        page.wait_text("#status", "online").await;
        page.wait_text("#messages", "bulk 5").await;
        // What changed while it was away is shown as it is now.
        page.wait_text("#messages li[data-seq=\"2\"]", "before 2, edited (edited)").await;
        post_message(&app, &alice.token, room, "after", None)
            .await
            .expect(201);
        page.wait_text("#messages", "after").await;
        assert_eq!(
            page.seqs().await,
            [1, 2, 3, 4, 5, 6],
            "no gap, no duplicate"
        );
        page.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_sees_every_room_and_the_page_fits_360_px_with_labelled_controls() {
    bounded(async {
        let app = spawn_app().await;
        let carol = register(&app, "carol").await;
        let private = id_of(&create_room(&app, &carol.token, "carol's", &[]).await);
        post_message(&app, &carol.token, private, "a customer question", None).await.expect(201);
        let agent = user_with_role(&app, "agent", Role::Agent).await;
        let browser = Browser::start().await;
        let page = browser.page_sized(360, 800).await;
        with_token(&page, &app, &agent.token).await;
        // The list of the agent's own rooms has loaded, empty: a member nowhere.
        page.wait_until(
            "the agent's own (empty) room list",
            "return document.querySelector('#rooms').dataset.ids === '';",
            vec![],
        )
        .await;
        page.click("#all-rooms").await;
        page.wait_text("#rooms", "carol's").await;
        open_room(&page, private).await;
        page.wait_text("#messages", "a customer question").await;
        // Search, over every room for an agent.
        page.fill("#search", "customer").await;
        page.click("#search-form button[type=submit]").await;
        page.wait_text("#results", "carol: a customer question").await;

        // Readable at 360 px: nothing wider than the window; every control labelled.
        let width = page.eval("return document.documentElement.scrollWidth;", vec![]).await;
        assert!(width.as_i64().unwrap() <= 360, "page is {width} px wide");
        let unlabelled = page
            .eval(
                "return [...document.querySelectorAll('input, textarea, button')]\
                   .filter(e => !(e.closest('label') || e.getAttribute('aria-label') || e.textContent.trim()))\
                   .map(e => e.outerHTML);",
                vec![],
            )
            .await;
        assert_eq!(unlabelled, json!([]));
        // The policy is strict and the files come from the binary.
        let response = app.http.get(app.url("/")).send().await.unwrap();
        let csp = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
        let js = app.http.get(app.url("/console/chatpool.js")).send().await.unwrap();
        assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
        assert!(js.text().await.unwrap().contains("export class Chatpool"));
        page.close().await;
    })
    .await;
}
