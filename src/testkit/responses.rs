//! Realistic cached API responses: deterministic JSON bodies shaped like
//! TMDB, AniList and Audnexus responses, of varied sizes, under unique
//! `(backend, signature)` keys in a random-looking order.
//!
//! Mix (by construction, see [`ResponseKind`]): about 90 % single records
//! of roughly 430 B to 1.3 KB, about 9 % list pages of up to 20 items
//! (about 9 KB when full), 1 % detail responses of 10 to 20 KiB (credits,
//! chapter lists); mean about 1.2 KiB. Free text is drawn from a word list
//! with a skewed (Zipf-like) choice, ids and image paths are random, field
//! names repeat the way real responses repeat them, so zstd compresses a
//! record about as well as it compresses real JSON.

use std::fmt::{Display, Write};

use super::Rng;

/// What shape of response an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseKind {
    /// One movie, anime or audiobook record (about 90 %).
    Record,
    /// A page of up to 20 list items (about 9 %).
    Page,
    /// A large detail response: credits or a chapter list (1 %).
    Detail,
}

/// One cached upstream response: its key and body.
#[derive(Clone, Debug)]
pub struct ApiResponse {
    /// The upstream (`tmdb`, `anilist` or `audnexus`).
    pub backend: &'static str,
    /// The request signature, e.g. `movie/603?language=en-US`.
    pub signature: String,
    /// The shape of the body.
    pub kind: ResponseKind,
    /// The JSON body.
    pub body: Vec<u8>,
}

const BACKENDS: [&str; 3] = ["tmdb", "anilist", "audnexus"];

/// Words of the free text (overviews, descriptions, titles), most common
/// first: [`Doc::word`] picks early words more often, as prose does.
const PROSE: &[&str] = &[
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "his",
    "her",
    "is",
    "with",
    "their",
    "for",
    "an",
    "on",
    "when",
    "as",
    "by",
    "from",
    "who",
    "that",
    "after",
    "world",
    "life",
    "young",
    "new",
    "man",
    "woman",
    "must",
    "family",
    "love",
    "story",
    "time",
    "years",
    "one",
    "friends",
    "war",
    "city",
    "home",
    "finds",
    "discovers",
    "becomes",
    "school",
    "secret",
    "journey",
    "father",
    "mother",
    "girl",
    "boy",
    "small",
    "town",
    "old",
    "team",
    "power",
    "dark",
    "into",
    "against",
    "save",
    "find",
    "only",
    "before",
    "while",
    "back",
    "death",
    "past",
    "future",
    "dream",
    "last",
    "first",
    "night",
    "island",
    "kingdom",
    "battle",
    "mystery",
    "detective",
    "killer",
    "heart",
    "brother",
    "sister",
    "daughter",
    "son",
    "wife",
    "husband",
    "agent",
    "soldier",
    "captain",
    "king",
    "queen",
    "prince",
    "princess",
    "magic",
    "demon",
    "hero",
    "villain",
    "revenge",
    "murder",
    "escape",
    "survive",
    "truth",
    "lies",
    "hidden",
    "ancient",
    "mysterious",
    "powerful",
    "forces",
    "together",
    "across",
    "through",
    "between",
    "beyond",
    "around",
    "without",
    "himself",
    "herself",
    "themselves",
    "everything",
    "nothing",
    "someone",
    "never",
    "forever",
    "begins",
    "returns",
    "learns",
    "decides",
    "struggles",
    "fights",
    "joins",
    "meets",
    "falls",
    "leaves",
    "tries",
    "uncovers",
    "reveals",
    "haunted",
    "galaxy",
    "planet",
    "space",
    "earth",
    "machine",
    "robot",
    "android",
    "virus",
    "ocean",
    "mountain",
    "desert",
    "forest",
    "village",
    "empire",
    "rebellion",
    "academy",
    "tournament",
    "guild",
    "dungeon",
    "sword",
    "dragon",
    "spirit",
    "ghost",
    "monster",
    "curse",
    "prophecy",
    "destiny",
    "memories",
    "voice",
    "music",
    "band",
    "idol",
    "stage",
    "dance",
    "summer",
    "winter",
    "festival",
    "train",
    "road",
    "narrator",
    "chapter",
    "bestselling",
    "author",
    "novel",
    "series",
    "edition",
    "unabridged",
    "award",
    "winning",
    "critically",
    "acclaimed",
    "epic",
    "thrilling",
    "heartwarming",
    "comedy",
    "drama",
    "thriller",
    "romance",
    "fantasy",
    "adventure",
    "science",
    "fiction",
    "history",
];

const GENRES: &[(u32, &str)] = &[
    (28, "Action"),
    (12, "Adventure"),
    (16, "Animation"),
    (35, "Comedy"),
    (80, "Crime"),
    (18, "Drama"),
    (14, "Fantasy"),
    (27, "Horror"),
    (9648, "Mystery"),
    (10749, "Romance"),
    (878, "Science Fiction"),
    (53, "Thriller"),
];

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Maps entry numbers to distinct ids in a random-looking order: a
/// bijection on the low 24 bits (odd multiply, xor-shift), so the first
/// 16.7M entries get distinct ids below 2^24 and keys arrive in random
/// order, not sorted.
fn scrambled_id(i: u64) -> u64 {
    const MASK: u64 = (1 << 24) - 1;
    let mut x = i & MASK;
    x = x.wrapping_mul(0x9E_3779) & MASK;
    x ^= x >> 13;
    x = x.wrapping_mul(0x5B_D1E5) & MASK;
    x ^= x >> 11;
    (i & !MASK) | x
}

/// The per-entry generator: seed and entry number mixed into one stream.
fn entry_rng(seed: u64, i: u64) -> Rng {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64();
    r
}

/// Backend and kind of entry `i`: 90 % records, 9 % pages, 1 % details.
fn shape(seed: u64, i: u64) -> (usize, ResponseKind) {
    let mut r = entry_rng(seed, i);
    let backend = r.below(3) as usize;
    match r.below(100) {
        // Details are TMDB credits or Audnexus chapter lists.
        0 => (backend & 2, ResponseKind::Detail),
        1..=5 => (backend, ResponseKind::Page),
        _ => (backend, ResponseKind::Record),
    }
}

fn signature(backend: usize, kind: ResponseKind, id: u64) -> String {
    use ResponseKind::*;
    match (BACKENDS[backend], kind) {
        ("tmdb", Record) => format!("movie/{id}?language=en-US"),
        ("tmdb", Page) => format!("movie/{id}/similar?language=en-US&page=1"),
        ("tmdb", Detail) => format!("movie/{id}?append_to_response=credits&language=en-US"),
        ("anilist", Record) => format!("media/{id}"),
        ("anilist", _) => format!("media/{id}/recommendations?page=1&perPage=20"),
        (_, Record) => format!("books/B0{id:08}?region=us"),
        (_, _) => format!("books/B0{id:08}/chapters?region=us"),
    }
}

/// The key of entry `i` of the workload seeded `seed`, without building
/// its body: distinct for every `i` below 2^24 (and beyond, for a given
/// seed), in random order.
pub fn api_key(seed: u64, i: u64) -> (&'static str, String) {
    let (backend, kind) = shape(seed, i);
    (BACKENDS[backend], signature(backend, kind, scrambled_id(i)))
}

/// Entry `i` of the workload seeded `seed`: key and body (the same bytes
/// on every machine).
pub fn api_response(seed: u64, i: u64) -> ApiResponse {
    let (backend, kind) = shape(seed, i);
    let id = scrambled_id(i);
    let mut doc = Doc::new(entry_rng(seed, i).next_u64());
    match (BACKENDS[backend], kind) {
        ("tmdb", ResponseKind::Record) => doc.tmdb_movie(id, true),
        ("tmdb", ResponseKind::Page) => doc.tmdb_page(id),
        ("tmdb", ResponseKind::Detail) => doc.tmdb_credits(id),
        ("anilist", ResponseKind::Record) => doc.anilist_media(id),
        ("anilist", _) => doc.anilist_page(id),
        (_, ResponseKind::Record) => doc.audnexus_book(id),
        (_, kind) => doc.audnexus_chapters(id, kind == ResponseKind::Detail),
    }
    ApiResponse {
        backend: BACKENDS[backend],
        signature: signature(backend, kind, id),
        kind,
        body: doc.s.into_bytes(),
    }
}

/// A JSON document written field by field (commas placed automatically).
struct Doc {
    s: String,
    rng: Rng,
}

impl Doc {
    fn new(seed: u64) -> Doc {
        Doc {
            s: String::with_capacity(1536),
            rng: Rng::new(seed),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    /// A comma unless the last byte opened an object or array.
    fn sep(&mut self) {
        if !matches!(self.s.as_bytes().last(), None | Some(b'{' | b'[')) {
            self.s.push(',');
        }
    }

    fn key(&mut self, k: &str) {
        self.sep();
        self.s.push('"');
        self.s.push_str(k);
        self.s.push_str("\":");
    }

    /// Opens an object or array (`{` or `[`), as field `k` or as an item.
    fn open(&mut self, k: Option<&str>, bracket: char) {
        match k {
            Some(k) => self.key(k),
            None => self.sep(),
        }
        self.s.push(bracket);
    }

    fn close(&mut self, bracket: char) {
        self.s.push(bracket);
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.quoted(v);
    }

    fn item_str(&mut self, v: &str) {
        self.sep();
        self.quoted(v);
    }

    fn quoted(&mut self, v: &str) {
        self.s.push('"');
        self.s.push_str(v);
        self.s.push('"');
    }

    fn raw(&mut self, k: &str, v: impl Display) {
        self.key(k);
        let _ = write!(self.s, "{v}");
    }

    /// Field `k`: a random integer in `lo..hi`.
    fn int(&mut self, k: &str, lo: u64, hi: u64) {
        let v = lo + self.below(hi - lo);
        self.raw(k, v);
    }

    fn decimal(&mut self, k: &str, int_below: u64, frac_digits: usize) {
        let int = self.below(int_below);
        let frac = self.below(10u64.pow(frac_digits as u32));
        self.key(k);
        let _ = write!(self.s, "{int}.{frac:0frac_digits$}");
    }

    /// A word of prose, common words more often (min of three uniform
    /// picks).
    fn word(&mut self) -> &'static str {
        let n = PROSE.len() as u64;
        let a = self.below(n);
        let b = self.below(n);
        let c = self.below(n);
        PROSE[a.min(b).min(c) as usize]
    }

    fn words(&mut self, n: u64) -> String {
        let mut t = String::new();
        for i in 0..n {
            if i > 0 {
                t.push(' ');
            }
            t.push_str(self.word());
        }
        t
    }

    /// A sentence-cased title of 1 to 4 words.
    fn title(&mut self) -> String {
        let n = 1 + self.below(4);
        let mut t = String::new();
        for i in 0..n {
            if i > 0 {
                t.push(' ');
            }
            let w = PROSE[(20 + self.below(PROSE.len() as u64 - 20)) as usize];
            let mut c = w.chars();
            if let Some(f) = c.next() {
                t.extend(f.to_uppercase());
                t.push_str(c.as_str());
            }
        }
        t
    }

    /// Free text of `min..max` words (short texts more often) ending in a
    /// full stop.
    fn text(&mut self, min: u64, max: u64) -> String {
        let n = min + self.below(max - min).min(self.below(max - min));
        let mut t = self.words(n);
        t.push('.');
        t
    }

    fn token(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| BASE62[self.below(62) as usize] as char)
            .collect()
    }

    fn date(&mut self) -> String {
        format!(
            "{}-{:02}-{:02}",
            1950 + self.below(75),
            1 + self.below(12),
            1 + self.below(28)
        )
    }

    fn genre_ids(&mut self) -> Vec<(u32, &'static str)> {
        let n = 1 + self.below(3);
        (0..n)
            .map(|_| GENRES[self.below(GENRES.len() as u64) as usize])
            .collect()
    }

    /// A TMDB movie: the full record (`full`) or the list-item subset.
    fn tmdb_movie(&mut self, id: u64, full: bool) {
        let title = self.title();
        let genres = self.genre_ids();
        self.open(None, '{');
        self.raw("adult", false);
        let backdrop = format!("/{}.jpg", self.token(27));
        self.str("backdrop_path", &backdrop);
        if full {
            self.raw("belongs_to_collection", "null");
            let budget = self.below(200) * 1_000_000;
            self.raw("budget", budget);
            self.open(Some("genres"), '[');
            for (gid, name) in &genres {
                self.open(None, '{');
                self.raw("id", gid);
                self.str("name", name);
                self.close('}');
            }
            self.close(']');
            self.str("homepage", "");
            self.companies();
        } else {
            self.open(Some("genre_ids"), '[');
            let ids: Vec<String> = genres.iter().map(|g| g.0.to_string()).collect();
            self.s.push_str(&ids.join(","));
            self.close(']');
        }
        self.raw("id", id);
        if full {
            self.open(Some("origin_country"), '[');
            self.item_str("US");
            self.close(']');
            let imdb = format!("tt{:07}", self.below(10_000_000));
            self.str("imdb_id", &imdb);
        }
        self.str("original_language", "en");
        self.str("original_title", &title);
        let overview = if full {
            self.text(3, 60)
        } else {
            self.text(15, 45)
        };
        self.str("overview", &overview);
        self.decimal("popularity", 200, 3);
        let poster = format!("/{}.jpg", self.token(27));
        self.str("poster_path", &poster);
        let date = self.date();
        self.str("release_date", &date);
        if full {
            self.int("revenue", 0, 900_000_000);
            self.int("runtime", 70, 180);
            self.str("status", "Released");
            let tagline = self.text(3, 10);
            self.str("tagline", &tagline);
        }
        self.str("title", &title);
        self.raw("video", false);
        self.decimal("vote_average", 10, 1);
        self.int("vote_count", 0, 30_000);
        self.close('}');
    }

    /// `production_companies` and `production_countries` of a movie.
    fn companies(&mut self) {
        self.open(Some("production_companies"), '[');
        for _ in 0..1 + self.below(2) {
            let id = self.below(150_000);
            let name = format!("{} Pictures", self.title());
            self.open(None, '{');
            self.raw("id", id);
            match self.below(3) {
                0 => self.raw("logo_path", "null"),
                _ => {
                    let logo = format!("/{}.png", self.token(27));
                    self.str("logo_path", &logo);
                }
            }
            self.str("name", &name);
            self.str("origin_country", "US");
            self.close('}');
        }
        self.close(']');
        self.open(Some("production_countries"), '[');
        self.open(None, '{');
        self.str("iso_3166_1", "US");
        self.str("name", "United States of America");
        self.close('}');
        self.close(']');
    }

    /// `movie/{id}/similar`: a page of up to 20 list items.
    fn tmdb_page(&mut self, id: u64) {
        let items = self.page_items();
        self.open(None, '{');
        self.raw("page", 1);
        self.open(Some("results"), '[');
        for k in 0..items {
            self.tmdb_movie(id * 31 + k, false);
        }
        self.close(']');
        self.int("total_pages", 1, 41);
        self.int("total_results", items, items + 800);
        self.close('}');
    }

    /// Items on a page: mostly a full page of 20, some shorter last pages.
    fn page_items(&mut self) -> u64 {
        if self.below(4) == 0 {
            return 1 + self.below(19);
        }
        20
    }

    /// A movie with its credits appended: 10 to 20 KiB.
    fn tmdb_credits(&mut self, id: u64) {
        let target = 10 * 1024 + self.below(10 * 1024) as usize;
        self.tmdb_movie(id, true);
        self.s.pop();
        self.open(Some("credits"), '{');
        self.open(Some("cast"), '[');
        let mut order = 0;
        while self.s.len() + 300 < target {
            self.cast_member(order);
            order += 1;
        }
        self.close(']');
        self.close('}');
        self.close('}');
    }

    fn cast_member(&mut self, order: u64) {
        let name = format!("{} {}", self.title(), self.title());
        let character = self.title();
        self.open(None, '{');
        self.raw("adult", false);
        self.int("gender", 1, 3);
        self.int("id", 0, 5_000_000);
        self.str("known_for_department", "Acting");
        self.str("name", &name);
        self.str("original_name", &name);
        self.decimal("popularity", 80, 3);
        let profile = format!("/{}.jpg", self.token(27));
        self.str("profile_path", &profile);
        self.int("cast_id", order, order + 50);
        self.str("character", &character);
        let credit = format!("52fe4{}", self.token(19).to_lowercase());
        self.str("credit_id", &credit);
        self.raw("order", order);
        self.close('}');
    }

    fn anilist_title(&mut self) {
        let romaji = self.title().to_lowercase();
        let english = self.title();
        self.open(Some("title"), '{');
        self.str("romaji", &romaji);
        self.str("english", &english);
        self.raw("native", "null");
        self.close('}');
    }

    fn anilist_cover(&mut self, id: u64) {
        let img = format!(
            "https://s4.anilist.co/file/anilistcdn/media/anime/cover/large/bx{id}-{}.jpg",
            self.token(12)
        );
        self.open(Some("coverImage"), '{');
        self.str("large", &img);
        let color = format!("#{:06x}", self.below(1 << 24));
        self.str("color", &color);
        self.close('}');
    }

    fn anilist_genres(&mut self) {
        self.open(Some("genres"), '[');
        for (_, g) in self.genre_ids() {
            self.item_str(g);
        }
        self.close(']');
    }

    fn fuzzy_date(&mut self, k: &str) {
        self.open(Some(k), '{');
        self.int("year", 1970, 2025);
        self.int("month", 1, 13);
        self.int("day", 1, 29);
        self.close('}');
    }

    /// An AniList `Media` record, in its GraphQL `data` envelope.
    fn anilist_media(&mut self, id: u64) {
        self.open(None, '{');
        self.open(Some("data"), '{');
        self.open(Some("Media"), '{');
        self.anilist_fields(id, true);
        self.close('}');
        self.close('}');
        self.close('}');
    }

    fn anilist_fields(&mut self, id: u64, full: bool) {
        self.raw("id", id);
        self.int("idMal", 0, 60_000);
        self.str("type", "ANIME");
        self.anilist_title();
        let format = ["TV", "MOVIE", "OVA", "ONA", "TV_SHORT"][self.below(5) as usize];
        self.str("format", format);
        self.str("status", "FINISHED");
        let description = if full {
            self.text(5, 60)
        } else {
            self.text(8, 30)
        };
        self.str("description", &description);
        if full {
            self.fuzzy_date("startDate");
            self.fuzzy_date("endDate");
            let season = ["WINTER", "SPRING", "SUMMER", "FALL"][self.below(4) as usize];
            self.str("season", season);
            self.int("seasonYear", 1970, 2025);
            self.int("duration", 5, 125);
        }
        self.int("episodes", 1, 61);
        self.anilist_genres();
        self.int("averageScore", 30, 90);
        self.int("popularity", 0, 500_000);
        self.anilist_cover(id);
        let url = format!("https://anilist.co/anime/{id}");
        self.str("siteUrl", &url);
    }

    /// An AniList recommendations page of up to 20 media.
    fn anilist_page(&mut self, id: u64) {
        let items = self.page_items();
        self.open(None, '{');
        self.open(Some("data"), '{');
        self.open(Some("Page"), '{');
        self.open(Some("pageInfo"), '{');
        self.int("total", items, items + 300);
        self.raw("perPage", 20);
        self.raw("currentPage", 1);
        self.raw("hasNextPage", items == 20);
        self.close('}');
        self.open(Some("media"), '[');
        for k in 0..items {
            self.open(None, '{');
            self.anilist_fields(id * 29 + k, false);
            self.close('}');
        }
        self.close(']');
        self.close('}');
        self.close('}');
        self.close('}');
    }

    fn asin(&mut self) -> String {
        format!("B0{}", self.token(8).to_uppercase())
    }

    fn people(&mut self, k: &str, with_asin: bool) {
        self.open(Some(k), '[');
        for _ in 0..1 + self.below(2) {
            self.open(None, '{');
            if with_asin {
                let asin = self.asin();
                self.str("asin", &asin);
            }
            let name = format!("{} {}", self.title(), self.title());
            self.str("name", &name);
            self.close('}');
        }
        self.close(']');
    }

    /// An Audnexus book record.
    fn audnexus_book(&mut self, id: u64) {
        let title = self.title();
        self.open(None, '{');
        self.str("asin", &format!("B0{id:08}"));
        self.people("authors", true);
        self.int("copyright", 1990, 2025);
        let description = self.text(5, 30);
        self.str("description", &description);
        self.str("formatType", "unabridged");
        self.open(Some("genres"), '[');
        let (_, genre) = GENRES[self.below(GENRES.len() as u64) as usize];
        self.open(None, '{');
        let genre_asin = format!("{}", 18_000_000_000 + self.below(1_000_000_000));
        self.str("asin", &genre_asin);
        self.str("name", genre);
        self.str("type", "genre");
        self.close('}');
        self.close(']');
        let image = format!("https://m.media-amazon.com/images/I/{}.jpg", self.token(11));
        self.str("image", &image);
        self.raw("isAdult", false);
        self.str("language", "english");
        self.str("literatureType", "fiction");
        self.people("narrators", false);
        let publisher = format!("{} Audio", self.title());
        self.str("publisherName", &publisher);
        self.decimal("rating", 5, 1);
        self.str("region", "us");
        let released = format!("{}T00:00:00.000Z", self.date());
        self.str("releaseDate", &released);
        self.int("runtimeLengthMin", 60, 1560);
        let summary = format!("<p>{}</p>", self.text(5, 50));
        self.str("summary", &summary);
        self.str("title", &title);
        self.close('}');
    }

    /// An Audnexus chapter list: a page of 20 to 60 chapters, or (as a
    /// detail response) up to about 20 KiB of them.
    fn audnexus_chapters(&mut self, id: u64, detail: bool) {
        let chapters = match detail {
            true => 110 + self.below(120),
            false => 20 + self.below(40),
        };
        self.open(None, '{');
        self.str("asin", &format!("B0{id:08}"));
        self.int("brandIntroDurationMs", 2000, 4000);
        self.int("brandOutroDurationMs", 4000, 6000);
        self.open(Some("chapters"), '[');
        let mut at = 0;
        for c in 0..chapters {
            let len = 300_000 + self.below(2_000_000);
            self.open(None, '{');
            self.raw("lengthMs", len);
            self.raw("startOffsetMs", at);
            self.raw("startOffsetSec", at / 1000);
            self.str("title", &format!("Chapter {}", c + 1));
            self.close('}');
            at += len;
        }
        self.close(']');
        self.raw("isAccurate", true);
        self.str("region", "us");
        self.raw("runtimeLengthMs", at);
        self.raw("runtimeLengthSec", at / 1000);
        self.close('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_match_the_responses() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let r = api_response(7, i);
            assert_eq!(api_key(7, i), (r.backend, r.signature.clone()));
            assert!(
                seen.insert((r.backend, r.signature)),
                "duplicate key at {i}"
            );
        }
    }

    #[test]
    fn bodies_are_json_of_the_promised_sizes() {
        let n = 5_000u64;
        // Per kind: count, raw bytes, smallest, largest.
        let mut stats = [(0, 0, usize::MAX, 0); 3];
        for i in 0..n {
            let r = api_response(1, i);
            let v: serde_json::Value = serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("entry {i} is not JSON: {e}"));
            assert!(v.is_object());
            let s = &mut stats[r.kind as usize];
            s.0 += 1;
            s.1 += r.body.len();
            s.2 = s.2.min(r.body.len());
            s.3 = s.3.max(r.body.len());
        }
        let total: usize = stats.iter().map(|s| s.1).sum();
        let mean = total / n as usize;
        eprintln!("mean {mean} B; (count, bytes, min, max) per kind: {stats:?}");
        let [record, page, detail] = stats;
        assert!((1100..1400).contains(&mean), "mean {mean}");
        assert!(record.2 >= 400 && record.3 <= 1400, "records {record:?}");
        assert!(record.0 * 100 / n as usize >= 88, "records {record:?}");
        assert!(page.3 <= 12 * 1024, "pages {page:?}");
        assert!(
            detail.2 >= 9 * 1024 && detail.3 <= 21 * 1024,
            "details {detail:?}"
        );
    }

    /// zstd-3 shrinks a 1 KiB record to 0.35-0.45 of raw, as it does real
    /// API JSON (not 0.1 like repeated text, not 1.0 like random bytes).
    #[test]
    fn records_compress_like_real_json() {
        let mut raw = 0;
        let mut stored = 0;
        let mut by_backend = [(0, 0); 3];
        for i in 0..3_000 {
            let r = api_response(5, i);
            if !(900..1150).contains(&r.body.len()) {
                continue;
            }
            let z = zstd::bulk::compress(&r.body, 3).unwrap().len();
            raw += r.body.len();
            stored += z;
            let b = BACKENDS.iter().position(|b| *b == r.backend).unwrap();
            by_backend[b].0 += r.body.len();
            by_backend[b].1 += z;
        }
        let ratio = stored as f64 / raw as f64;
        let each: Vec<f64> = by_backend
            .iter()
            .map(|(r, s)| *s as f64 / *r as f64)
            .collect();
        eprintln!("zstd-3 on ~1 KiB records: {ratio:.3} of raw; per backend {each:.3?}");
        assert!((0.5..=0.7).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(api_response(3, 99).body, api_response(3, 99).body);
        assert_ne!(api_response(3, 99).body, api_response(4, 99).body);
    }
}
